from hkd.cli import main

raise SystemExit(main())
