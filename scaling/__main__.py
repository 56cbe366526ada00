from scaling.cli.app import main

main()
