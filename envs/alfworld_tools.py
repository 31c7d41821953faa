"""ALFWorld tools: what the model may call, and the TextWorld command each call sends (docs/original.md §4.2)."""
from __future__ import annotations

from envs.base import Tool

# name -> (parameters, command template, description). `put` uses the 2.1.1 grammar of the shipped games.
_TOOLS: dict[str, tuple[tuple[str, ...], str, str]] = {
    "goto": (("recep",), "go to {}",
             "Go to a receptacle, e.g. goto('shelf 1'). On arrival you see the objects in it, unless it is closed."),
    "take": (("obj", "recep"), "take {} from {}",
             "Take an object from the receptacle you are at, e.g. take('apple 3', 'drawer 3'). You must be at the "
             "receptacle and the object must be in it; afterwards you carry the object."),
    "put": (("obj", "recep"), "put {} in/on {}",
            "Put an object you carry into or onto the receptacle you are at, e.g. put('apple 3', 'fridge 1')."),
    "open": (("recep",), "open {}", "Open the closed receptacle you are at, e.g. open('drawer 1')."),
    "close": (("recep",), "close {}", "Close the open receptacle you are at, e.g. close('drawer 1')."),
    "toggle": (("obj_or_recep",), "toggle {}", "Switch on the object you carry or the receptacle you are at."),
    "clean": (("obj", "recep"), "clean {} with {}",
              "Clean an object you carry with a receptacle where things can be cleaned (e.g. 'sinkbasin 1'); you "
              "must be at that receptacle."),
    "heat": (("obj", "recep"), "heat {} with {}",
             "Heat an object you carry with a receptacle that heats (e.g. 'microwave 1'); you must be at it."),
    "cool": (("obj", "recep"), "cool {} with {}",
             "Cool an object you carry with a receptacle that cools (e.g. 'fridge 1'); you must be at it."),
    "use": (("obj",), "use {}", "Use an object, e.g. use('desklamp 1') to switch a lamp on."),
    "examine": (("obj_or_recep",), "examine {}",
                "Look closely at an object you carry or the receptacle you are at."),
    "inventory": ((), "inventory", "List what you are carrying."),
    "look": ((), "look", "Repeat the description of the place you are at."),
}

TOOLS: list[Tool] = [
    Tool(name, description, f"{name}({', '.join(p + ': str' for p in params)}) -> None")
    for name, (params, _template, description) in _TOOLS.items()
]
PARAMETERS: dict[str, tuple[str, ...]] = {name: spec[0] for name, spec in _TOOLS.items()}


def to_command(name: str, args: list[str]) -> str:
    """The TextWorld command of a validated tool call, e.g. ("take", ["apple 1", "fridge 1"])."""
    return _TOOLS[name][1].format(*args)


def from_command(command: str) -> list[str]:
    """A TextWorld command as [tool, *args]; accepts the newer `move O to R` form for `put`."""
    for verb, sep, tool in [("take ", " from ", "take"), ("move ", " to ", "put"), ("put ", " in/on ", "put"),
                            ("clean ", " with ", "clean"), ("heat ", " with ", "heat"), ("cool ", " with ", "cool")]:
        if command.startswith(verb) and sep in command:
            return [tool, *command[len(verb):].split(sep, 1)]
    for verb, tool in [("go to", "goto"), ("open", "open"), ("close", "close"), ("toggle", "toggle"),
                       ("use", "use"), ("examine", "examine"), ("inventory", "inventory"), ("look", "look")]:
        if command == verb:
            return [tool]
        if command.startswith(verb + " "):
            return [tool, command[len(verb) + 1:]]
    raise ValueError(f"no tool for command {command!r}")
