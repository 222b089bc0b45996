FROM mcr.microsoft.com/powershell:7.4-ubuntu-22.04
SHELL ["pwsh", "-NoLogo", "-Command"]
RUN Write-Output "hello"
CMD Get-Date
ENTRYPOINT ["pwsh"]
