from p2pfl.cli import run

run()
