FROM alpine:3.19
ENV A=1 \
    B=2
RUN echo $A \
 && echo $B
CMD ["sh"]
