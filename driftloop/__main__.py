from driftloop.cli import app

app()
