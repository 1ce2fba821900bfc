"""negminer inside sentence-transformers' trainer: the negative cache as a loss.

``NegativeCacheLoss(model, corpus=..., num_negatives=...)`` is a sentence-transformers loss (an
``nn.Module`` with ``forward(sentence_features, labels)``, like MultipleNegativesRankingLoss) for
(anchor, positive) pairs. It keeps a store of target embeddings for ``corpus`` (negminer's TargetStore),
filled at the first forward (every row encoded by the model in eval mode, without gradient, batched),
draws hard negatives per anchor from softmax(stale score / tau_s) by Gumbel-top-k with their inclusion
probabilities (negminer's cache sampler), re-encodes the drawn rows with gradient, and trains on
negminer's corrected sampled softmax (each drawn negative's logit minus log pi; the other anchors'
positives mixed in as MNRL does, each candidate weighted by both sources' expected counts). After each
optimiser step the refreshers run (write-back of the positives and drawn rows the step encoded, fraction
refresh of the oldest rows). Positives are found in the corpus by their token ids and never drawn, nor
rows of the same (normalised) text, nor the anchor's other positives.

Options are negminer's, as keywords: ``sampler`` (cache | exact | uniform | inbatch), ``refresh``
(write-back, fraction, full, nystrom; ``auto``), ``refresh_fraction``, ``refresh_order``, ``write_back``,
``correction`` (the -log pi correction on/off), ``margin`` (drop candidates whose stale score is above
positive - margin), ``inbatch`` (mix in the other anchors' positives), ``scale`` (1 / tau: 20 as MNRL,
i.e. tau = 0.05), ``similarity`` (cos as MNRL, or dot), ``sample_temperature``, ``cache_size``; rules.py
refuses what does not combine, with the reason.

Usage (beside the ``negminer train`` command line)::

    from datasets import Dataset
    from sentence_transformers import (SentenceTransformer, SentenceTransformerTrainer,
                                       SentenceTransformerTrainingArguments)
    from negminer.st import NegativeCacheLoss

    model = SentenceTransformer("sentence-transformers/all-MiniLM-L6-v2")
    pairs = Dataset.from_dict({"anchor": queries, "positive": answers})
    corpus = list(dict.fromkeys(answers + more_documents))        # or {doc_id: text}; holds every positive
    loss = NegativeCacheLoss(model, corpus=corpus, num_negatives=8, refresh_fraction=0.05)
    args = SentenceTransformerTrainingArguments(output_dir="out", per_device_train_batch_size=64,
                                                save_steps=500)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=pairs, loss=loss,
                                         callbacks=[loss.callback()])
    trainer.train()                          # later: trainer.train(resume_from_checkpoint=True)
    print(loss.target_encodes, loss.refresh_encodes, loss.stats)   # encodes; staleness, drawn_age, ages

``loss.callback()`` steps the loss with the trainer: the refreshers after each optimiser step, the cache
(store embeddings and ages, the sampler's and refreshers' tensors, step, seed and counters: ``.npy``,
safetensors and JSON, never pickle) saved into every checkpoint as ``checkpoint-N/negminer_cache/`` and
restored by ``trainer.train(resume_from_checkpoint=...)``, so the resumed run draws from the same store and
continues the same loss curve. Left out, the loss adds it to its trainer at the first training step.
Outside a trainer call ``loss.after_step()`` after each ``optimizer.step()`` and ``loss.set_train_dataset``
once, and save with ``loss.save_cache(folder)`` / ``loss.load_cache(folder)``.

Counters: ``target_encodes`` (positives and drawn rows with gradient plus ``refresh_encodes``),
``refresh_encodes`` (the fill and every refresh), ``query_encodes``; ``stats`` after each step: ``drawn_age``
(steps since the drawn rows were encoded), ``staleness`` (mean ||cached - fresh||^2 / ||fresh||^2 of the drawn
rows), ``store_age_mean`` / ``store_age_max``; ``last``: the last forward's embeddings, batch, draw, loss
inputs and loss.
"""

from negminer.st.cache_loss import CACHE_DIR, NegativeCacheLoss
from negminer.st.callback import NegativeCacheCallback

__all__ = ["NegativeCacheLoss", "NegativeCacheCallback", "CACHE_DIR"]
