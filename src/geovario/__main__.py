from geovario.cli import main

raise SystemExit(main())
