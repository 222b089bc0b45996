FROM busybox
ENV A=one
ENV A=two B=$A
LABEL before=$A
