"""python -m flashdecoding info|run|bench"""
import sys

from .cli import main

sys.exit(main())
