from fusebundle.cli import main

raise SystemExit(main())
