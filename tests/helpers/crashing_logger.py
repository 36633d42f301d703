"""A logger that fails on its first record: a run that fails before its first checkpoint (a
"failed start"), for the fault suite."""


class CrashingLogger:
    def __init__(self, run_dir=None, name=None, run_config=None, group=None):
        pass

    def log(self, kind, record):
        raise RuntimeError("deliberate failure before the first checkpoint")

    def log_image(self, key, path, record):
        pass

    def finish(self):
        pass
