#!/usr/bin/env python
import os
import sys


def main() -> None:
    # Production unless another module is asked for by name: a forgotten variable must never
    # serve debug pages. `make demo` asks for webapp.settings.demo, developers for .dev.
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings.production")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
