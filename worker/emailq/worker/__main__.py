from emailq.worker.commands.cli import main

main()
