from negminer.cli import main

raise SystemExit(main())
