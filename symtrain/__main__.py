from symtrain.cli import main

main()
