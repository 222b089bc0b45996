# escape=`

FROM mcr.microsoft.com/windows/servercore:ltsc2022
ARG TOOLS_DIR=C:\tools\
ENV DOWNLOAD_URL "https://example.com/tool.zip" 
SHELL ["powershell", "-Command"]
WORKDIR ${TOOLS_DIR}
RUN `
    Invoke-WebRequest -Uri $env:DOWNLOAD_URL -OutFile tool.zip; `
    Expand-Archive tool.zip -DestinationPath . ; `
    Remove-Item tool.zip
COPY scripts\* ${TOOLS_DIR}scripts\
VOLUME "C:\data"
ENTRYPOINT  ". C:\tools\scripts\start.ps1; powershell"
