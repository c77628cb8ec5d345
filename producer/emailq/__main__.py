from emailq.command import main

main()
