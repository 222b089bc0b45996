# syntax=docker/dockerfile:1
FROM python:3.12-alpine
RUN python3 <<EOF
import json, sys
with open("/build-info.json", "w") as f:
    json.dump({"python": sys.version}, f)
EOF
RUN <<-'SCRIPT' sh -x
	echo "tabs stripped, $HOME not expanded by the frontend"
	ls /
	SCRIPT
CMD ["cat", "/build-info.json"]
