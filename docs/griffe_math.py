"""Griffe extension for the API reference: make the docstrings' math visible to arithmatex.

The package's docstrings write inline math as ``\\\\( ... \\\\)`` and display math as
``\\\\[ ... \\\\]`` (a Markdown-escaped backslash, so that plain Markdown prints
``\\( ... \\)`` for a browser-side renderer). ``pymdownx.arithmatex`` treats an escaped
backslash as text, and Markdown would then apply emphasis and escapes inside the
formula. This extension rewrites the doubled backslash before the delimiters to a
single one while the docstrings are loaded, so arithmatex protects the formula and
KaTeX renders it. The source files are not changed.
"""

import re

import griffe

_DELIMITER = re.compile(r"\\\\([()\[\]])")


def _fix(obj):
    if obj.docstring is not None and "\\\\" in obj.docstring.value:
        obj.docstring.value = _DELIMITER.sub(r"\\\1", obj.docstring.value)


class DocstringMath(griffe.Extension):
    def on_instance(self, *, obj, **kwargs):
        _fix(obj)
