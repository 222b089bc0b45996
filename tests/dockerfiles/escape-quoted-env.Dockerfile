FROM alpine
ENV GREETING="hello world" \
    SINGLE='no $expansion here' \
    MIXED=a\ b\ c \
    JSON='{"k": "v"}' \
    DOLLAR=\$HOME
ENV DERIVED="${GREETING}!" PATHS=/a:/b:$DOLLAR
LABEL "com.example.quoted key"="value with spaces" plain=ok
RUN echo "$GREETING"
