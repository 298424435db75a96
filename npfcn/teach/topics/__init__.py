"""One module per ``npfcn explain`` topic; each has ``run(output, say, **options) -> dict``."""
