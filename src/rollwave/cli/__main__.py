from rollwave.cli.main import main

main()
