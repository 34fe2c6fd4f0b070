"""Version of the Python package; it must equal the C library's FD_VERSION."""

__version__ = "0.2.0"


def version_int(text: str = __version__) -> int:
    """'MAJOR.MINOR.PATCH' -> MAJOR*10000 + MINOR*100 + PATCH (fd_get_version's encoding)."""
    major, minor, patch = (int(p) for p in text.split(".")[:3])
    return major * 10000 + minor * 100 + patch


def version_text(value: int) -> str:
    """MAJOR*10000 + MINOR*100 + PATCH -> 'MAJOR.MINOR.PATCH'."""
    return f"{value // 10000}.{value // 100 % 100}.{value % 100}"
