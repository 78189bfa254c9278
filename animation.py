#!/usr/bin/env python
"""Animate a 3D Gaussian avatar with body motion and facial expressions (CLI; see ``python animation.py --help``)."""

import sys

from threestudio.animation.cli import main

if __name__ == "__main__":
    sys.exit(main())
