from backlink.cli import main

raise SystemExit(main())
