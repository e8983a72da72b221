"""``python -m services.standin`` (what ``vor svor-server`` runs): the SVOR stand-in."""

import argparse
import sys

from services.standin.cli import (
    add_arguments,
    colours_from_args,
    faults_from_args,
    texts_from_args,
)
from services.standin.server import serve


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="vor svor-server", description="An SVOR-compatible server on the local engine."
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    serve(
        args.host,
        args.port,
        faults=faults_from_args(args),
        api_key=args.api_key,
        log_level=args.log_level,
        engine=args.engine,
        texts=texts_from_args(args),
        text_colours=colours_from_args(args),
    )
    return 0


sys.exit(main(sys.argv[1:]))
