from emailq.worker.cli import main

main()
