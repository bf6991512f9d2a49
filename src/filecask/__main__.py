from filecask.cli import main

main()
