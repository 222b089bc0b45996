FROM alpine
ENV PRICE=\$5 LITERAL='$PATH' QUOTED="\$PATH is $HOME"
RUN echo "$PRICE is not expanded by the frontend"
