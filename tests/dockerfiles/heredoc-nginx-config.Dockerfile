FROM nginx:1.25
ARG SERVER_NAME=example.com
COPY <<EOF /etc/nginx/conf.d/site.conf
server {
    listen 80;
    server_name ${SERVER_NAME};
    location / {
        root /usr/share/nginx/html;
        try_files \$uri \$uri/ =404;
    }
}
EOF
RUN nginx -t
