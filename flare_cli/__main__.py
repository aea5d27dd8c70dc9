from flare_cli.cli import main

main()
