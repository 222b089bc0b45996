# escape=`
FROM mcr.microsoft.com/windows/servercore:ltsc2022
SHELL ["powershell", "-Command", "$ErrorActionPreference = 'Stop';"]
WORKDIR C:\app
RUN New-Item -ItemType Directory -Path C:\data ; `
    Set-Content -Path C:\data\ready.txt -Value ok
ENV TOOLS=C:\tools\``
RUN dir C:\Windows\System32\ ``
COPY app\ C:\app\
CMD ["powershell", "C:\\app\\start.ps1"]
