"""(being written)"""


def add_commands(sub) -> None:
  """Adds this family's subcommands to the `jaxvision` parser."""
