FROM ubuntu:18.04
MAINTAINER Jane Doe <jane@example.com>
RUN apt-get update && apt-get install -y nginx
ADD site.tar.gz /var/www/
EXPOSE 80
CMD nginx -g "daemon off;"
