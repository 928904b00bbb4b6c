from imgvec.cli import app

app()
