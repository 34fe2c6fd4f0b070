"""python -m flashdecoding.bench [options] (the same as python -m flashdecoding bench)"""
import sys

from . import main

sys.exit(main())
