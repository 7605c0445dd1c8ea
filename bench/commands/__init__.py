"""The `ferbench` commands, one module per command (or small family of subcommands).

Each module has `add_parser(subparsers)`, which adds its command's parser with `fn` set to the command's handler;
`bench.cli.COMMANDS` lists the modules in the order `ferbench --help` shows them. A new command is a new module
here and one entry in that tuple.
"""
