# syntax=docker/dockerfile:1


FROM   alpine:3.19   AS   base

	 RUN	echo indented


CMD    [ "echo" ,  "spaced json" ]
