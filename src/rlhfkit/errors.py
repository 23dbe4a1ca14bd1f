"""One exception type for everything the user can fix: the CLI prints it as one line and exits 2."""


class RlhfkitError(Exception):
    """A problem with the user's input (config, data file, model path ...), stated in one line."""


class ConfigError(RlhfkitError):
    pass


class DataError(RlhfkitError):
    pass


class ModelError(RlhfkitError):
    pass
