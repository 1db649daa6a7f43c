from lifelong.bench.cli import main

raise SystemExit(main())
