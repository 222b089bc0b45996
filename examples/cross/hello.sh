#!/bin/sh
echo "hello from $(uname -m): built for @TARGET@ on @BUILT_ON@"
