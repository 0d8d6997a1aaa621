#!/bin/sh
# Demo: list and read the share mounted at $1.
M=$1
echo "DEMO BEGIN"
echo "\$ ls -lR $M"
ls -lR "$M"
for f in $(find "$M" -type f | sort); do
    echo "\$ cat ${f#$M/}"
    cat "$f"
done
echo "\$ df -h $M"
df -h "$M"
echo "DEMO END"
