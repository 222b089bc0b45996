# just a comment
ARG X=1
