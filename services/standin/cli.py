"""``vor svor-server``'s flags: where to listen, the key, the engine, the text table, and
one flag per ``Faults`` field."""

from __future__ import annotations

import argparse
import types
import typing
from typing import Any

from services.standin.colours import Colour, parse_text_colours
from services.standin.faults import Faults
from services.standin.prompts import Box, parse_text_box


def _argument_type(annotation: Any) -> type:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    found: type = args[0] if isinstance(annotation, types.UnionType) and args else annotation
    return found


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``vor svor-server`` flags: where to listen, the key, and one flag per ``Faults`` field."""
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--api-key", default=None, help="require this Bearer key (default: none)")
    parser.add_argument("--log-level", default="warning")
    parser.add_argument(
        "--engine", choices=["local", "boxes"], default="local",
        help="local: real segmentation and erasure; boxes: boxes are the objects and erasure "
        "returns the video unchanged (for load tests)",
    )  # fmt: skip
    parser.add_argument(
        "--text-box", dest="text_boxes", action="append", type=parse_text_box, default=[],
        metavar="TEXT=x,y,w,h",
        help="a text prompt finds this box (normalised, on the annotation frame); repeat for more "
        "boxes and texts (also settable at runtime: POST /_texts)",
    )  # fmt: skip
    parser.add_argument(
        "--text-color", dest="text_colours", action="append", type=_text_colours, default=[],
        metavar="TEXT=#rrggbb[,#rrggbb]",
        help="a text prompt finds every region of these colours on every frame, numbered per "
        "upload by first appearance (also settable at runtime: POST /_text_colors)",
    )  # fmt: skip
    faults = parser.add_argument_group("faults (also settable at runtime: POST /_faults)")
    for name, info in Faults.model_fields.items():
        flag = "--" + name.replace("_", "-")
        kind = _argument_type(info.annotation)
        if kind is bool:
            faults.add_argument(flag, action="store_true", help=info.description)
        else:
            faults.add_argument(flag, type=kind, default=info.default, help=info.description)


def _text_colours(value: str) -> tuple[str, list[Colour]]:
    try:
        return parse_text_colours(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def colours_from_args(args: argparse.Namespace) -> dict[str, list[Colour]]:
    table: dict[str, list[Colour]] = {}
    for text, colours in args.text_colours:
        table.setdefault(text, []).extend(colours)
    return table


def faults_from_args(args: argparse.Namespace) -> Faults:
    return Faults(**{name: getattr(args, name) for name in Faults.model_fields})


def texts_from_args(args: argparse.Namespace) -> dict[str, list[Box]]:
    texts: dict[str, list[Box]] = {}
    for text, box in args.text_boxes:
        texts.setdefault(text, []).append(box)
    return texts
