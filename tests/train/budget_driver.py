"""Run by test_store_budget.py in a child process: train with a memory-mapped store larger than the
private memory this process may use (RLIMIT_DATA counts anonymous memory, not file-backed maps),
checkpoint, continue, then resume from a copy of the checkpoint and print both runs as JSON."""

import gc
import json
import resource
import shutil
import sys

import torch


def status_mb(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) // 1024
    return 0


def main(root: str, n: int, margin_mb: int, max_ram_mb: float) -> None:
    from negminer.config import resolve
    from negminer.data.load import load_dataset
    from negminer.encoders import build_encoder
    from negminer.train.trainer import Trainer

    ds = load_dataset(f"synthetic:{n}")
    opts = {"data": "", "out": f"{root}/run", "encoder": "static", "negatives": "cache", "num_negatives": 4,
            "refresh_fraction": 0.002, "batch_size": 16, "steps": 6, "quiet": True, "zero_shot": False,
            "store_max_ram_mb": max_ram_mb, "seed": 1, "target_max_length": 16, "query_max_length": 16}
    torch.manual_seed(1)
    models = [build_encoder("static", query_max_length=16, target_max_length=16) for _ in range(2)]
    budget = status_mb("VmData") + margin_mb  # what RLIMIT_DATA counts
    resource.setrlimit(resource.RLIMIT_DATA, (budget * 2**20, resource.RLIM_INFINITY))
    tr = Trainer(resolve(opts), dataset=ds, model=models[0])
    store_mb = tr.store.nbytes // 2**20
    tr.setup_sampler()
    tr.model.train()
    losses = []
    for s in range(6):
        losses.append(tr.train_step(s))
        tr.step = s + 1
        if tr.step == 3:
            tr.save()
            shutil.copytree(f"{root}/run/checkpoint", f"{root}/saved")
    final = tr.store.embeddings(torch.arange(0, n, 997)).sum().item()
    mapped = str(tr.store.path)
    del tr, models[0]  # the first run's optimizer state and gradients
    gc.collect()
    shutil.rmtree(f"{root}/run/checkpoint")
    shutil.copytree(f"{root}/saved", f"{root}/run/checkpoint")
    again = Trainer(resolve(opts), dataset=ds, model=models[0])
    assert again.resume()
    again.setup_sampler()
    again.model.train()
    resumed = []
    for s in range(3, 6):
        resumed.append(again.train_step(s))
        again.step = s + 1
    print(json.dumps({"store_mb": store_mb, "budget_mb": budget, "vm_data_mb": status_mb("VmData"), "path": mapped,
                      "losses": losses, "resumed": resumed, "final": final,
                      "final_resumed": again.store.embeddings(torch.arange(0, n, 997)).sum().item()}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
