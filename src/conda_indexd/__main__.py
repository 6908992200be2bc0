from conda_indexd.cli.main import main

raise SystemExit(main())
