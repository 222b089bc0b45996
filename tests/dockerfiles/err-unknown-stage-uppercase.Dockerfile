FROM alpine AS base
FROM alpine
COPY --from=My_Stage /x /x
