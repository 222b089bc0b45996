# escape=`
FROM mcr.microsoft.com/windows/servercore:ltsc2022
SHELL ["powershell", "-Command", "$ErrorActionPreference = 'Stop';"]
WORKDIR C:\app
COPY . C:\app\
RUN Write-Host 'line one'; `
    Write-Host 'line two'
ENV TOOLS_DIR=C:\tools
CMD ["powershell", "-File", "C:\\app\\start.ps1"]
