"""Griffe extension for the API reference: docstrings written for plain text and
Sphinx, shown through Markdown.

* Math. The docstrings write inline math as ``\\\\( ... \\\\)`` and display math as
  ``\\\\[ ... \\\\]`` (a Markdown-escaped backslash, so that plain Markdown prints
  ``\\( ... \\)`` for a browser-side renderer). ``pymdownx.arithmatex`` treats an
  escaped backslash as text, and Markdown would then apply emphasis and escapes inside
  the formula. The doubled backslash before a delimiter becomes a single one, so
  arithmatex protects the formula and KaTeX renders it. A display formula on lines of
  its own gets blank lines around it, which arithmatex needs to see it as a block.
* Sphinx roles. ``:class:`~pkg.mod.Name``` and the like become the code span
  ``Name`` (the name as Sphinx would print it).

Only the loaded docstrings change, not the source files.
"""

import re

import griffe

_DELIMITER = re.compile(r"\\\\([()\[\]])")
_OPEN_BLOCK = re.compile(r"(?m)(\S[ \t]*\n)([ \t]*\\\[[ \t]*)$")
_CLOSE_BLOCK = re.compile(r"(?m)^([ \t]*\\\][ \t]*\n)(?=[ \t]*\S)")
_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|exc|obj):`(?P<tilde>~?)(?P<target>[^`]+)`")


def _role(match):
    target = match["target"]
    return f"`{target.rsplit('.', 1)[-1] if match['tilde'] else target}`"


def clean(text):
    """``text`` with the math delimiters un-escaped and Sphinx roles as code spans."""
    text = _DELIMITER.sub(r"\\\1", text)
    text = _CLOSE_BLOCK.sub(r"\1\n", _OPEN_BLOCK.sub(r"\1\n\2", text))
    return _ROLE.sub(_role, text)


class DocstringMarkdown(griffe.Extension):
    def on_instance(self, *, obj, **kwargs):
        if obj.docstring is not None:
            obj.docstring.value = clean(obj.docstring.value)
