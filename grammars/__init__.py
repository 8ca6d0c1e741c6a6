"""The lvs.cf grammar, shipped as package data so an installed lvs-compile finds it."""

from importlib.resources import files


def grammar_text() -> str:
    return files(__name__).joinpath("lvs_cf.lark").read_text(encoding="utf-8")
