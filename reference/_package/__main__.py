from backlink.experiments.cli import main

raise SystemExit(main())
