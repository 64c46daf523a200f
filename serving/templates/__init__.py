"""Templates ``smserve new`` fills in (package data, read with :mod:`importlib.resources`).

Each ``*.tmpl`` file is the text of one generated file, with ``{{name}}``-style
placeholders; :mod:`serving.commands.new` lists them and what they become.
"""
