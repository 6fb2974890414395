"""Types of the optional C module built from storage/_speedups.c."""

#: The wanted tags, in the order :func:`walk` expects their names.
TAGS: tuple[int, ...]

def walk(
    data: bytes | bytearray | memoryview,
    pos: int,
    end: int,
    big: bool,
    implicit: bool,
    values: dict[str, bytes],
    names: tuple[str, ...],
    /,
) -> tuple[int, bool, int]: ...
def decode_values(values: dict[str, bytes], /) -> dict[str, str]: ...
